"""`cxr.app`'s web server: the page and the API around one loaded cxr model.

`server.py` the FastAPI routes, `uploads.py` reading uploads in memory within limits and decoding
them, `batching.py` concurrent requests sharing a forward pass, `identity.py` which model answers;
`templates/` and `static/` the page (vendored: nothing is fetched from elsewhere at run time).
"""
