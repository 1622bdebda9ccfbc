"""FineTune operator: one LoRA fine-tune per FineTuneTask, with proof it beats the base model."""

__version__ = "0.1.0"

GROUP = "finetune.v-sekai.org"
VERSION = "v1alpha1"
KIND = "FineTuneTask"
PLURAL = "finetunetasks"
API_VERSION = f"{GROUP}/{VERSION}"
