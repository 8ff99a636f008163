"""The parts of cluster-weights: grids, weight layout, opset upgrade, weights, encoding.

Names with a leading underscore are private to this package and the pass module.
"""
