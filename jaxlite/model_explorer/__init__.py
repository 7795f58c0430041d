"""Model Explorer extension: ``model-explorer m.jlite --extensions=jaxlite.model_explorer``
(needs ``pip install jaxlite[explorer]``). The adapter class lives in ``main``, where
Model Explorer looks for it."""
