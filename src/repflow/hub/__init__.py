"""Sharing runs as the ecosystem does: diffusers pipeline folders, model cards, the Hugging Face Hub."""
