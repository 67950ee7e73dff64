"""A request that authenticates with a scheme the API does not take is told which ones it does.

``curl -u admin:<password>`` sends HTTP Basic credentials; without this, DRF ignores the header and answers
"Authentication credentials were not provided", which reads as if nothing had been sent. Basic is not
accepted on purpose: it would hash a password (argon2) on every request.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

ACCEPTED = (b"token",)


class UnacceptedScheme(BaseAuthentication):
    """Last in the list: refuses (401) a request whose ``Authorization`` scheme no earlier class took."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() in ACCEPTED:
            return None
        scheme = header[0].decode("latin-1")[:20]
        raise exceptions.AuthenticationFailed(
            f"{scheme} authentication is not accepted: send 'Authorization: Token <key>' (the command "
            "'hubserver drf_create_token <username>' makes a key), or log in for a session cookie."
        )
