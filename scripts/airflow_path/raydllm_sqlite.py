"""SQLite connection arguments for the local Airflow (make airflow, the drills): wait up to 30 s for the write
lock instead of sqlite3's 5 s. Scheduler, triggerer, DAG processor, api-server and task
processes all write one SQLite file; on a loaded 2-core machine a writer can hold the lock
past 5 s, and the api-server then answers 500 "database is locked" (seen: a dag-run POST
failed while an XCom write was committing)."""

CONNECT_ARGS = {"timeout": 30}
CONNECT_ARGS_ASYNC = {"timeout": 30}
