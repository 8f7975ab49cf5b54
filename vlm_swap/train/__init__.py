"""Alignment fine-tuning: recipes, the freeze/LoRA plan, data, and the HF Trainer wiring."""
