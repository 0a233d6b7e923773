from django.http import HttpResponse


def system_status(request):
    return HttpResponse("todo")
