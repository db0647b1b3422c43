"""The sync DAGs, one per sync definition: wiring only. The logic lives in the ``ticketsync`` package under
``plugins/``; the DAGs are built by :mod:`ticketsync.factory` from the definitions shipped in
``plugins/ticketsync/definitions/`` (``servicenow_ticket_sync`` from ``sn_bom_loan_service.yaml``,
``servicenow_credit_card_sync`` from ``sn_bom_credit_card_service.yaml``) and from the folder named by the
environment variable ``TICKETSYNC_DEFINITIONS_DIR``, if set. Parsing reads those files and nothing else (no
connection, Variable or database); an invalid definition fails this file's import with a message naming the file,
the field and the rule. How a definition becomes a DAG: docs/definitions.md.
"""

from __future__ import annotations

from ticketsync.factory import sync_dags

# Each DAG at module level, where Airflow's DAG processor finds it.
globals().update(sync_dags())
