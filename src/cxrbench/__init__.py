"""cxrbench: which pretrained initialization makes the best chest-radiograph classifier?

Data flows one way: official metadata -> index -> cache -> run -> evaluation -> report.
"""

__version__ = "0.1.0"
