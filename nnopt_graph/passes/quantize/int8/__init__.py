"""The parts of quantize-int8: placement, QDQ editing, fusion check, sensitivity.

Names with a leading underscore are private to this package and the pass module.
"""
