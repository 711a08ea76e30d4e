"""The offline pipeline: mining, scoring and SANS weights (mining), and mined negatives and weights as training inputs
(inputs).
"""
