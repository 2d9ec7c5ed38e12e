"""`ray job submit ... -- python jobs/sweep_classifier.py style --num-samples 16`

The same flags as `midiforge sweep drums|style`: a Ray Tune sweep (ASHA) over the
classifier's hyperparameters; the best trial is exported to ONNX and registered.
"""

from midiforge.classifiers import sweep_command
from midiforge.job import run_job

if __name__ == "__main__":
    run_job(__doc__, sweep_command.add_sweep, sweep_command.run_sweep)
