"""The job queue's contract in Redis (records, atomic scripts, store, webhook egress policy), shared by the gateway's
jobs API and the worker (`jobs/`)."""
