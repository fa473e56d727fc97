// Image references as Docker reads them.

/**
 * The registry an image reference names: the first path component when it has a "." or ":" or
 * is "localhost"; otherwise Docker Hub ("docker.io").
 */
export function registryOf(image: string): string {
  const slash = image.indexOf('/');
  if (slash < 0) return 'docker.io';
  const first = image.slice(0, slash);
  return first.includes('.') || first.includes(':') || first === 'localhost' ? first : 'docker.io';
}
