import { defineConfig } from "vite";

// The edge serves dist/ with one route per file (pi/edge/static.py): no dev server, no
// CDN. Hashed names under assets/ are cached for a year; index.html is revalidated.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    // Swagger UI (the console) is a separate, lazily loaded file: never inline it.
    assetsInlineLimit: 0,
    sourcemap: false,
    chunkSizeWarningLimit: 2048,
  },
});
