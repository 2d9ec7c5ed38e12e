"""`ray job submit ... -- python jobs/finetune_transcriber.py --dataset D --output NAME`

The same flags as `midiforge train run`. With `--style fiddle` (or chorale, quartet) and no
--dataset it runs the pre-built recipe instead: render held-out and varied training
pieces, fine-tune, compare with stock, register NAME = the style.
"""

from midiforge.job import run_job
from midiforge.transcription import train_command

if __name__ == "__main__":
    run_job(__doc__, train_command.add_job, train_command.run_job)
