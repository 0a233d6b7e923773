from django.http import HttpResponse


def _todo(request, **kwargs):
    return HttpResponse("todo")


login_view = verify_view = enrol_view = logout_view = account_view = self_reset_view = _todo
user_list_view = admin_reset_view = _todo


def lockout_response(request, credentials=None, *args, **kwargs):
    return HttpResponse("locked", status=429)
