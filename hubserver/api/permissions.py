"""Django model permissions for the API, with ``view`` required to read and per-action overrides."""

from rest_framework.permissions import DjangoModelPermissions

VIEW = ["%(app_label)s.view_%(model_name)s"]


def perm(model, kind):
    """``"app_label.kind_modelname"`` for a model class."""
    return f"{model._meta.app_label}.{kind}_{model._meta.model_name}"


class HubModelPermissions(DjangoModelPermissions):
    """``DjangoModelPermissions`` that also needs ``view`` for GET/HEAD/OPTIONS (DRF's lets anyone read).

    A view may declare ``action_permissions = {action: {METHOD: [(model, kind), ...]}}`` to replace the
    model's default permission for an extra action: e.g. ``provision`` needs ``change``, not ``add``.
    HEAD uses GET's entry. Anonymous users are always refused.
    """

    perms_map = {
        "GET": VIEW,
        "HEAD": VIEW,
        "OPTIONS": VIEW,
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }

    def has_permission(self, request, view):
        user = request.user
        if not user or not user.is_authenticated:
            return False
        required = self.action_perms(request, view)
        if required is None:
            return super().has_permission(request, view)
        return user.has_perms(required)

    @staticmethod
    def action_perms(request, view):
        table = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if not table:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        entries = table.get(method)
        return None if entries is None else [perm(model, kind) for model, kind in entries]
