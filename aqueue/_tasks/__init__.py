"""Tier 3, what a job is made of: tasks and their registry, the job context, middleware."""
