"""lmms-eval looks for a ``tasks`` package in every plug-in (LMMS_EVAL_PLUGINS); vlm-swap ships none."""
