"""The status page at GET /admin: signed-in HTML view of /admin/status, shared across workers.

`views` holds the blueprint, `session` the signed cookie, CSRF and sign-in limits, `shared` the
numbers every worker agrees on (merged from app.activity), `render` what the templates show.
"""
