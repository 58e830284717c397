"""Pure builders: the desired child objects of a Model or ModelServer, as plain dicts.

They read nothing and write nothing; the handlers apply what they return with server-side
apply, so calling them twice describes the same object twice.
"""
