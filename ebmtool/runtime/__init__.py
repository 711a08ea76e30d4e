"""The process: one-sentence errors, several processes (torchrun), devices and precision, seeded random streams,
progress bars.
"""
