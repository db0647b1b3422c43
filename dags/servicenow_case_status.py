"""The status DAGs, one per sync definition: wiring only. The logic lives in the ``ticketsync`` package under
``plugins/``; the DAGs are built by :mod:`ticketsync.factory` from the same definitions as the sync DAGs
(``servicenow_case_status`` from ``sn_bom_loan_service.yaml``, ``servicenow_credit_card_status`` from
``sn_bom_credit_card_service.yaml``, and one per definition of the folder named by ``TICKETSYNC_DEFINITIONS_DIR``).
Each writes the state of its target table's cases back into its source table's rows. Parsing reads the definition
files and nothing else (no connection, Variable or database). docs/case-status.md, docs/definitions.md.
"""

from __future__ import annotations

from ticketsync.factory import status_dags

# Each DAG at module level, where Airflow's DAG processor finds it.
globals().update(status_dags())
