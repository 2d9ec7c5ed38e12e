"""`ray job submit ... -- python jobs/finetune_lora.py --base NAME --dataset URI --out NAME`

The same flags as `midiforge lm finetune`; on the cluster the driver joins the job's Ray
cluster (RAY_ADDRESS is set by the job supervisor).
"""

import argparse
import logging
import sys

from midiforge.lm import command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    command.add_finetune(parser)
    args, rest = parser.parse_known_args()
    overrides = [a for a in rest if a.startswith("--") and "=" in a]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(command.run_finetune(args, overrides))
