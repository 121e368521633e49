"""How bytes arrive: our HTTP/1.1 server on uvloop and httptools."""
