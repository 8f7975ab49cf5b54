"""Alignment fine-tuning: recipes, the freeze/LoRA plan, the feature cache and the HF Trainer wiring.

The data pipeline it trains on is ``vlm_swap.data``.
"""
