"""sbatch templates shipped as package data (``*.sbatch``) and their renderer (:mod:`.render`)."""

from .render import EXAMPLES, TEMPLATES, render_template, submit, template_names

__all__ = ["EXAMPLES", "TEMPLATES", "render_template", "submit", "template_names"]
