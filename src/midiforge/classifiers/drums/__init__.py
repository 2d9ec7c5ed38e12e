"""The drum-hit filter: onset detection proposes hits on a drum stem, a small classifier
learnt from a producer's edits decides which to keep, and fixed per-stem thresholds decide
when no model is given."""
