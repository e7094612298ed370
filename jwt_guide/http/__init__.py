"""HTTP pieces: JSON and RFC 6750 errors, serving limits, the development server, the JWKS
app and its discovery document, and make serve (``python -m jwt_guide.http.serve``)."""
