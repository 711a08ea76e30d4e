"""Reading what training made: evaluation, comparisons on identical problems with intervals and paired tests, the arms
and their confounds, statistics, reports and figures, `info`, studies, the pre-flight and export.
"""
