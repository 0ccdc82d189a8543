"""Session fixture ``couchdb_url``: a real CouchDB-compatible server.

Placeholder: the CouchDB engine work fills this in (pouchdb-server started
on a free loopback port, or COZYD_TEST_COUCHDB_URL).
"""
