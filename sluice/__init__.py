"""sluice: a durable campaign executor for e-commerce customer reach.

The project's top-level folders (workflows, activities, audiences, kinds,
content, workers, schemas, api, db) install as subpackages of this one package
(the package-dir mapping in pyproject.toml), so nothing lands in
site-packages under a name another distribution owns: imports read
``from sluice.workflows import ...``.
"""
