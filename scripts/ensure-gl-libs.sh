#!/bin/sh
# The mesh renderer draws with OpenGL through EGL on Mesa (llvmpipe on CPU-only machines).
# Install Debian's packages for it when they are missing and we may (root with apt-get);
# otherwise say what happens: pretext3d then renders meshes as point splats.
if ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1 ' && ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing libegl1 and libgl1-mesa-dri for headless OpenGL rendering"
    apt-get install -y -qq libegl1 libgl1-mesa-dri >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libegl1 libgl1-mesa-dri >/dev/null 2>&1) \
        || echo "warning: could not install libegl1/libgl1-mesa-dri; meshes will be rendered as point splats"
else
    echo "note: EGL/Mesa not found (install libegl1 and libgl1-mesa-dri); meshes will be rendered as point splats"
fi
exit 0
