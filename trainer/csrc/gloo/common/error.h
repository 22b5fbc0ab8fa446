#pragma once
// Stand-in for Gloo's header: see ../README.md.
