"""Patronus inside other libraries' pipelines: diffusers in
``patronus.pipelines.diffusers_pipeline`` (imported on its own, as diffusers is optional)."""
