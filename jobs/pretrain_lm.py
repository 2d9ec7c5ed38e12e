"""`ray job submit ... -- python jobs/pretrain_lm.py --dataset URI --preset small --out NAME`

The same flags as `midiforge lm pretrain`; on the cluster the driver joins the job's Ray
cluster (RAY_ADDRESS is set by the job supervisor).
"""

from midiforge.job import run_job
from midiforge.lm import command

if __name__ == "__main__":
    run_job(__doc__, command.add_pretrain, command.run_pretrain)
