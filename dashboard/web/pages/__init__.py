"""Server-rendered pages (HTML forms; the live parts are in ``static/js``)."""
