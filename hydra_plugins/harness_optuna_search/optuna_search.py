"""``hparams_search=optuna``'s sweeper: Hydra's Optuna sweeper, which ends a search in which no trial finished
with Optuna's "No trials are completed yet" traceback. Here such a search ends like any sweep with failed
jobs: ``optimization_results.yaml`` says that no trial finished, and the sweep summary lists the failures and
exits 1. (Hydra takes sweepers only from the ``hydra_plugins`` namespace, hence this module's place.)"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the sweep extra is not installed: no Optuna search, and nothing to extend
    OptunaSweeper = None

if OptunaSweeper is not None:

    class OptunaSearch(OptunaSweeper):
        """Hydra's ``OptunaSweeper`` whose search also ends cleanly when every trial failed."""

        def setup(self, *, hydra_context, task_function, config) -> None:
            self.sweep_dir = Path(str(config.hydra.sweep.dir))  # Sweeper.setup is where the config arrives
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

        def sweep(self, arguments):
            try:
                return super().sweep(arguments)
            except ValueError as e:
                if "No trials are completed" not in str(e):
                    raise
            log.error("no trial of the search finished; see the sweep summary for why")
            results = "name: optuna\nbest_params: null\nbest_value: null  # no trial finished\n"
            (self.sweep_dir / "optimization_results.yaml").write_text(results)
            return None
