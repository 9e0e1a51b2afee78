"""``kubectl kubeloop dashboard``: the loop as pictures, served on 127.0.0.1 with the user's own
kubeconfig (so it shows and does exactly what that user's RBAC allows).

``views`` turns API objects into what each page shows (pure); ``server`` watches the objects,
pushes them to the page with server-sent events and runs the plugin's own commands for the
buttons; ``static/`` holds every asset the page loads (nothing comes from a CDN).
"""
