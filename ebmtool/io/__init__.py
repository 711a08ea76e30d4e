"""Files: the artifact formats and integrity checks (artifacts), checkpoints, the negatives file, directory locks and
provenance.
"""
