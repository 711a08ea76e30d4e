"""The method: the noise schedule, energy descent and the sampler (diffusion), the energy networks and their registry
(models), and the compute rule (compute).
"""
