"""One module per REST resource, each with an `APIRouter` named `router`."""
