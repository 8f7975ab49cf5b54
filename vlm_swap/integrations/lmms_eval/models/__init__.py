"""lmms-eval's plug-in table (LMMS_EVAL_PLUGINS=vlm_swap.integrations.lmms_eval): ``--model vlm_swap``."""

AVAILABLE_MODELS = {"vlm_swap": "VlmSwap"}
