"""Evaluation suites, one per dataset: what `deployzoo run` scores a task's predictions with (suites.base.Suite)."""
