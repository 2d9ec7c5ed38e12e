"""`ray job submit ... -- python jobs/finetune_lora.py --base NAME --dataset URI --out NAME`

The same flags as `midiforge lm finetune`; on the cluster the driver joins the job's Ray
cluster (RAY_ADDRESS is set by the job supervisor).
"""

from midiforge.job import run_job
from midiforge.lm import command

if __name__ == "__main__":
    run_job(__doc__, command.add_finetune, command.run_finetune)
