"""Headless OpenGL mesh renderer: moderngl over EGL (Mesa's llvmpipe on CPU-only machines).

Chosen by measurement on the 2-core CPU machine (see ``benchmarks/bench_render.py``): llvmpipe
rasterises 224x224 views of ShapeNet meshes one to two orders of magnitude faster than a
vectorised rasteriser in torch/numpy. It needs Debian's ``libegl1`` and ``libgl1-mesa-dri``
(``make`` installs them when it can); without them ``gl_available()`` is False and the caller
falls back to the point-splat renderer.

One OpenGL context per process, made on first use; a mesh is uploaded once and drawn from
every camera. Phong shading per fragment (see ``shading.py``), flat (face normals) or smooth
(area-weighted vertex normals), the colour in attachment 0 and the linear depth in attachment 1.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from pretext3d.render.shading import Lighting

__all__ = ["GLRenderer", "gl_available", "gl_unavailable_reason"]

_VERTEX_SHADER = """
#version 330
uniform mat4 view;
uniform mat4 proj;
in vec3 in_position;
in vec3 in_normal;
in vec3 in_color;
out vec3 cam_position;
out vec3 cam_normal;
out vec3 albedo;
void main() {
    vec4 p = view * vec4(in_position, 1.0);
    cam_position = p.xyz;
    cam_normal = mat3(view) * in_normal;
    albedo = in_color;
    gl_Position = proj * p;
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform vec3 light_dirs[2];
uniform float intensities[2];
uniform float ambient;
uniform float specular;
uniform float shininess;
in vec3 cam_position;
in vec3 cam_normal;
in vec3 albedo;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
void main() {
    vec3 e = normalize(-cam_position);
    vec3 n = normalize(cam_normal);
    if (dot(n, e) < 0.0) n = -n;
    float diffuse = ambient;
    float highlight = 0.0;
    for (int i = 0; i < 2; ++i) {
        float nl = dot(n, light_dirs[i]);
        diffuse += intensities[i] * max(nl, 0.0);
        vec3 r = 2.0 * nl * n - light_dirs[i];
        highlight += nl > 0.0 ? intensities[i] * pow(max(dot(r, e), 0.0), shininess) : 0.0;
    }
    out_color = vec4(clamp(albedo * diffuse + specular * highlight, 0.0, 1.0), 1.0);
    out_depth = -cam_position.z;
}
"""

_state = threading.local()
_failure: str | None = None


def _create_context():
    import moderngl

    errors = []
    for libs in ({"libgl": "libGL.so.1", "libegl": "libEGL.so.1"}, {}):
        try:
            return moderngl.create_standalone_context(backend="egl", **libs)
        except Exception as err:  # glcontext raises plain Exceptions with the loader's message
            errors.append(f"{type(err).__name__}: {err}")
    raise RuntimeError("; ".join(errors))


def _context():
    """This process's context, made on first use. A context does not survive fork (and forking
    a process whose llvmpipe threads run can deadlock the child), so ``prepare`` starts its
    workers from a clean interpreter and each makes its own."""
    global _failure
    if getattr(_state, "pid", None) != os.getpid():
        _state.pid, _state.ctx, _state.cache = os.getpid(), None, {}
        try:
            _state.ctx = _create_context()
        except Exception as err:
            _failure = f"no headless OpenGL context ({err}); install Debian's libegl1 and libgl1-mesa-dri"
    return _state.ctx


def gl_available() -> bool:
    """Whether an OpenGL 3.3 context can be made here (moderngl imports and EGL works)."""
    if os.environ.get("PRETEXT3D_NO_GL", "") not in ("", "0"):
        return False
    try:
        import moderngl  # noqa: F401
    except ImportError:
        return False
    return _context() is not None


def gl_unavailable_reason() -> str:
    if os.environ.get("PRETEXT3D_NO_GL", "") not in ("", "0"):
        return "disabled by PRETEXT3D_NO_GL"
    try:
        import moderngl  # noqa: F401
    except ImportError:
        return "the moderngl package is not installed"
    return _failure or "OpenGL is available"


class GLRenderer:
    """Draws one mesh from many cameras into (H, W) images with depth and mask."""

    def __init__(self, image_size: tuple[int, int], lighting: Lighting, background: tuple[float, float, float]):
        ctx = _context()
        if ctx is None:
            raise RuntimeError(gl_unavailable_reason())
        self.ctx, self.height, self.width = ctx, *image_size
        self.background_bytes = np.round(np.asarray(background) * 255).astype(np.uint8)
        self.program = self._program(lighting)
        key = ("fbo", self.height, self.width)
        if key not in _state.cache:
            color = ctx.renderbuffer((self.width, self.height), 4)
            depth_linear = ctx.renderbuffer((self.width, self.height), 1, dtype="f4")
            zbuffer = ctx.depth_renderbuffer((self.width, self.height))
            _state.cache[key] = ctx.framebuffer([color, depth_linear], zbuffer)
        self.fbo = _state.cache[key]

    def _program(self, lighting: Lighting):
        key = ("program", lighting)
        if key not in _state.cache:
            program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
            program["light_dirs"].write(lighting.directions().tobytes())
            program["intensities"].write(np.asarray(lighting.intensities, np.float32).tobytes())
            program["ambient"].value = lighting.ambient
            program["specular"].value = lighting.specular
            program["shininess"].value = lighting.shininess
            _state.cache[key] = program
        return _state.cache[key]

    def draw(self, triangles: np.ndarray, corners: np.ndarray, view: np.ndarray, proj: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """triangles: (3F, 9) position, normal, albedo per corner of every face; corners: (P, 9)
        the same for each distinct vertex, drawn as one-pixel points after the faces so that
        every vertex covers the pixel it projects to (thin parts, silhouette corners);
        view, proj: (V, 4, 4).

        Returns colour (V, H, W, 3) uint8 on the background colour, linear depth (V, H, W)
        float32 (0 on the background) and the mask (V, H, W) bool.
        """
        layout = ("3f 3f 3f", "in_position", "in_normal", "in_color")
        resources = []
        images = np.empty((len(view), self.height, self.width, 3), np.uint8)
        mask = np.empty((len(view), self.height, self.width), bool)
        depth = np.empty((len(view), self.height, self.width), np.float32)
        try:
            vbo = self.ctx.buffer(np.ascontiguousarray(triangles, dtype="f4").tobytes())
            resources.append(vbo)
            vao = self.ctx.vertex_array(self.program, [(vbo, *layout)])
            resources.append(vao)
            point_vbo = self.ctx.buffer(np.ascontiguousarray(corners, dtype="f4").tobytes())
            resources.append(point_vbo)
            point_vao = self.ctx.vertex_array(self.program, [(point_vbo, *layout)])
            resources.append(point_vao)
            self.fbo.use()
            self.ctx.enable(self.ctx.DEPTH_TEST)
            self.ctx.depth_func = "<="
            for v in range(len(view)):
                self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)  # alpha 0 and depth 0 mark the background
                self.program["view"].write(np.ascontiguousarray(view[v].T, dtype="f4").tobytes())
                self.program["proj"].write(np.ascontiguousarray(proj[v].T, dtype="f4").tobytes())
                vao.render()
                point_vao.render(mode=self.ctx.POINTS)
                rgba = np.frombuffer(self.fbo.read(components=4, attachment=0), np.uint8)
                rgba = rgba.reshape(self.height, self.width, 4)[::-1]  # GL rows start at the bottom
                mask[v] = rgba[..., 3] > 0
                images[v] = np.where(mask[v, ..., None], rgba[..., :3], self.background_bytes)
                lin = np.frombuffer(self.fbo.read(components=1, attachment=1, dtype="f4"), np.float32)
                depth[v] = lin.reshape(self.height, self.width)[::-1]
        finally:
            for resource in reversed(resources):
                resource.release()
        return images, depth, mask
