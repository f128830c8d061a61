"""Online experiments of the similar-items module: assignment, variant tables, analysis, simulation."""
