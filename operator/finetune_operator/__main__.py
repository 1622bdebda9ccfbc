"""`python -m finetune_operator` is the `finetune` command."""
import sys

from .cli import main

sys.exit(main())
