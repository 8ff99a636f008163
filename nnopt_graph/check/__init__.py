"""The one measurement: equality, per-sample fidelity, guard, verification, structure checks."""
