"""`ray job submit ... -- python jobs/build_dataset.py --audio ... --out ...`

The same flags as `midiforge dataset build`; on the cluster the driver joins the job's
Ray cluster (RAY_ADDRESS is set by the job supervisor).
"""

from midiforge.job import run_job
from midiforge.pipeline import command

if __name__ == "__main__":
    run_job(__doc__, command.add_arguments, command.run)
