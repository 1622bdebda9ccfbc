"""The trainer image's package: fetch a prepared run, evaluate base, train with Axolotl, evaluate
the best adapter with the same code, upload adapter + metrics.json. Imports from the operator
package only `finetune_contract` and `finetune_contract.storage` (the run contract)."""
