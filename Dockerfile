# ticketsync's Airflow image: the official image plus this project's pinned requirements.
# The tag must match the apache-airflow pin in requirements.txt (tests/test_docker_compose.py checks it),
# and the Python version must match the one constraints.txt was locked with.
FROM apache/airflow:3.3.2-python3.11

# The image's documented way to add packages: pip as the `airflow` user, which installs into ~/.local.
# constraints.txt is the full lock. Naming the image's own apache-airflow version as well makes pip fail
# here, rather than silently swap Airflow, if requirements.txt ever pins a different one.
USER airflow
COPY --chown=airflow:root requirements.txt constraints.txt /opt/ticketsync/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/ticketsync/requirements.txt \
        -c /opt/ticketsync/constraints.txt

# docker-compose.yaml selects FAB's auth manager, as Airflow's own compose file does. The base image ships the
# FAB provider but our lock does not pin it, so check at build time, not at first login, that it still imports.
RUN python -c "from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager"

# The ticketsync package lives in plugins/ (mounted by docker-compose.yaml). Airflow puts the plugins folder on
# sys.path itself; PYTHONPATH also covers plain `python -m ticketsync.…` processes. The emulator (dev/) sets its own.
ENV PYTHONPATH="/opt/airflow/plugins${PYTHONPATH:+:${PYTHONPATH}}"
